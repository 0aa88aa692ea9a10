//! Where a pass reads next and whether a page makes sense: offsets, the overlap with the
//! previous page, shift detection and the page budget. Pure: the caller fetches and logs.

use crate::domain::RawHash;

/// Pages a pass may read beyond twice what `totalResults` implies: a source whose offsets
/// advance but never reach the end is stopped instead of read forever.
const PAGE_BUDGET_MARGIN: u64 = 10;

/// The shape of a page as the source answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageShape {
    pub len: u64,
    pub has_more: bool,
    pub next_index: Option<u64>,
    pub total: Option<u64>,
}

/// Where to ask for the next page, and how many already-read records it re-reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub start: u64,
    pub overlap: u64,
}

/// What to do with a page the source answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The page was no longer than the overlap and did not advance: read on from the cursor,
    /// without overlap, and store nothing.
    ReadOn,
    Store(Accepted),
}

/// A page to store: which of its records are new to this pass, and what comes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Indices of the records not already read on the previous page.
    pub fresh: Vec<usize>,
    pub next_start: u64,
    pub has_more: bool,
    /// An empty page with `hasMore` was taken as the end of the list.
    pub ended_on_empty_page: bool,
    /// The overlap did not contain the previous page's last record: offsets shifted back by
    /// more than `page_overlap`, so a record may be missed until the next pass.
    pub shifted_beyond_overlap: bool,
}

/// Where the next page starts and what the previous page ended with.
#[derive(Debug, Clone)]
pub struct PageCursor {
    page_size: u32,
    page_overlap: u32,
    /// Where this run of the pass started reading; the page budget counts from here.
    resumed_at: u64,
    next_start: u64,
    /// Raw hashes of the previous page's last `page_overlap` records: a record of the next
    /// page's overlap found here was read already and is skipped.
    tail: Vec<RawHash>,
    /// How many records the previous page had; bounds the overlap so a page always advances.
    last_len: u64,
    /// Records per page as the source serves them (the first non-empty page of this run, at
    /// most `page_size`): with `totalResults`, what bounds the pages of the pass.
    per_page: Option<u64>,
    /// Pages accepted in this run.
    pages: u64,
}

impl PageCursor {
    pub fn new(resumed_at: u64, page_size: u32, page_overlap: u32) -> Self {
        Self {
            page_size,
            page_overlap,
            resumed_at,
            next_start: resumed_at,
            tail: Vec::new(),
            last_len: u64::from(page_size),
            per_page: None,
            pages: 0,
        }
    }

    /// Where the pass stands: the offset right after the last accepted page.
    pub fn next_start(&self) -> u64 {
        self.next_start
    }

    /// The next request. Nothing overlaps on a pass's first page, nor on the first page
    /// after a restart.
    pub fn request(&self) -> Request {
        let overlap = if self.tail.is_empty() {
            0
        } else {
            u64::from(self.page_overlap).min(self.last_len / 2)
        };
        Request {
            start: self.next_start.saturating_sub(overlap),
            overlap,
        }
    }

    /// Judge the page answered to `request`, whose records have raw hashes `hashes`, and
    /// move past it. An error is a page that makes no sense (the text says why); the cursor
    /// is then left where it was.
    pub fn accept(
        &mut self,
        request: Request,
        page: PageShape,
        hashes: &[RawHash],
    ) -> Result<Decision, String> {
        let Request { start, overlap } = request;
        let len = page.len;
        // A nextIndex that does not move past the page is a fault, never nudged forward:
        // reading on from start + 1 would only re-read the same records.
        let next_start = page.next_index.unwrap_or(start.saturating_add(len));
        let mut has_more = page.has_more;
        let mut ended_on_empty_page = false;
        if has_more && len == 0 && overlap == 0 {
            // An empty page ends the list, whatever hasMore says, unless totalResults says
            // records are still ahead: then completing would mark them deleted.
            if let Some(total) = page.total.filter(|total| start < *total) {
                return Err(format!(
                    "empty page with hasMore though totalResults is {total}"
                ));
            }
            ended_on_empty_page = true;
            has_more = false;
        }
        if has_more && next_start <= self.next_start {
            if overlap > 0 {
                self.tail.clear();
                return Ok(Decision::ReadOn);
            }
            return Err(format!(
                "contact list did not advance (hasMore with nextIndex {next_start})"
            ));
        }
        if len > 0 && self.per_page.is_none() {
            self.per_page = Some(len.min(u64::from(self.page_size)));
        }
        if let (true, Some(total), Some(per_page)) = (has_more, page.total, self.per_page) {
            let step = (per_page - u64::from(self.page_overlap).min(per_page / 2)).max(1);
            let expected = total.saturating_sub(self.resumed_at).div_ceil(step);
            let budget = expected
                .saturating_mul(2)
                .saturating_add(PAGE_BUDGET_MARGIN);
            if self.pages + 1 > budget {
                return Err(format!(
                    "still hasMore after {} pages from offset {}, where totalResults {total} at {per_page} a page implies {expected}",
                    self.pages + 1,
                    self.resumed_at
                ));
            }
        }
        let window = &hashes[..hashes.len().min(overlap as usize + 1)];
        let shifted_beyond_overlap =
            overlap > 0 && !self.tail.last().is_some_and(|last| window.contains(last));
        let fresh = hashes
            .iter()
            .enumerate()
            .filter(|(i, hash)| (*i as u64) >= overlap || !self.tail.contains(hash))
            .map(|(i, _)| i)
            .collect();

        self.next_start = next_start;
        self.last_len = len;
        let keep = hashes.len().saturating_sub(self.page_overlap as usize);
        self.tail = hashes[keep..].to_vec();
        self.pages += 1;
        Ok(Decision::Store(Accepted {
            fresh,
            next_start,
            has_more,
            ended_on_empty_page,
            shifted_beyond_overlap,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> RawHash {
        [n; 16]
    }

    fn hashes(range: std::ops::Range<u8>) -> Vec<RawHash> {
        range.map(h).collect()
    }

    fn shape(len: u64, has_more: bool, total: Option<u64>) -> PageShape {
        PageShape {
            len,
            has_more,
            next_index: None,
            total,
        }
    }

    fn stored(decision: Decision) -> Accepted {
        match decision {
            Decision::Store(accepted) => accepted,
            Decision::ReadOn => panic!("expected a page to store"),
        }
    }

    /// Answer the cursor's next request with `page` of `hashes`; the page must be stored.
    fn read(cursor: &mut PageCursor, page: PageShape, hashes: &[RawHash]) -> Accepted {
        let request = cursor.request();
        stored(cursor.accept(request, page, hashes).unwrap())
    }

    #[test]
    fn first_page_has_no_overlap_and_later_pages_reread_the_tail() {
        let mut cursor = PageCursor::new(0, 4, 2);
        let first = cursor.request();
        assert_eq!(
            first,
            Request {
                start: 0,
                overlap: 0
            }
        );
        let page = stored(
            cursor
                .accept(first, shape(4, true, None), &hashes(0..4))
                .unwrap(),
        );
        assert_eq!((page.fresh, page.next_start), (vec![0, 1, 2, 3], 4));
        let second = cursor.request();
        assert_eq!(
            second,
            Request {
                start: 2,
                overlap: 2
            }
        );
        // The source re-serves records 2 and 3 first: they are skipped.
        let page = stored(
            cursor
                .accept(second, shape(4, false, None), &hashes(2..6))
                .unwrap(),
        );
        assert_eq!(page.fresh, vec![2, 3]);
        assert!(!page.shifted_beyond_overlap && !page.has_more);
        assert_eq!(cursor.next_start(), 6);
    }

    #[test]
    fn shift_beyond_overlap_is_detected_when_the_last_record_is_missing() {
        let mut cursor = PageCursor::new(0, 4, 1);
        read(&mut cursor, shape(4, true, None), &hashes(0..4));
        // Two records were removed ahead of the cursor: record 3 is not in the overlap.
        let page = read(&mut cursor, shape(4, true, None), &hashes(5..9));
        assert!(page.shifted_beyond_overlap);
        assert_eq!(page.fresh, vec![0, 1, 2, 3]);
    }

    #[test]
    fn no_shift_is_reported_when_the_overlap_holds_the_last_record() {
        let mut cursor = PageCursor::new(0, 4, 1);
        read(&mut cursor, shape(4, true, None), &hashes(0..4));
        let page = read(&mut cursor, shape(4, true, None), &hashes(3..7));
        assert!(!page.shifted_beyond_overlap);
        assert_eq!(page.fresh, vec![1, 2, 3]);
    }

    #[test]
    fn empty_page_with_has_more_ends_the_list_unless_total_says_more_is_ahead() {
        let mut cursor = PageCursor::new(0, 4, 0);
        let page = read(&mut cursor, shape(0, true, Some(0)), &[]);
        assert!(page.ended_on_empty_page && !page.has_more);

        let mut cursor = PageCursor::new(0, 4, 0);
        let request = cursor.request();
        let err = cursor
            .accept(request, shape(0, true, Some(10)), &[])
            .unwrap_err();
        assert!(err.contains("totalResults is 10"), "{err}");
        assert_eq!(cursor.next_start(), 0, "a refused page leaves the cursor");
    }

    #[test]
    fn a_next_index_that_does_not_advance_is_refused() {
        let mut cursor = PageCursor::new(8, 4, 0);
        let request = cursor.request();
        let page = PageShape {
            next_index: Some(8),
            ..shape(4, true, None)
        };
        let err = cursor.accept(request, page, &hashes(0..4)).unwrap_err();
        assert!(err.contains("did not advance"), "{err}");
    }

    #[test]
    fn a_page_no_longer_than_the_overlap_reads_on_from_the_cursor() {
        let mut cursor = PageCursor::new(0, 4, 2);
        read(&mut cursor, shape(4, true, None), &hashes(0..4));
        let second = cursor.request();
        let page = PageShape {
            next_index: Some(4),
            ..shape(2, true, None)
        };
        assert_eq!(
            cursor.accept(second, page, &hashes(2..4)).unwrap(),
            Decision::ReadOn
        );
        assert_eq!(
            cursor.request(),
            Request {
                start: 4,
                overlap: 0
            }
        );
    }

    #[test]
    fn pages_beyond_the_budget_that_total_results_implies_are_refused() {
        // 20 records at 4 a page: 5 pages expected, 2 * 5 + 10 = 20 allowed.
        let mut cursor = PageCursor::new(0, 4, 0);
        for page in 0..20u8 {
            read(
                &mut cursor,
                shape(4, true, Some(20)),
                &hashes(page * 4..page * 4 + 4),
            );
        }
        let request = cursor.request();
        let err = cursor
            .accept(request, shape(4, true, Some(20)), &hashes(200..204))
            .unwrap_err();
        assert!(err.contains("still hasMore after 21 pages"), "{err}");
    }
}
