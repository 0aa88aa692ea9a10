pub async fn run(_contacts: usize) -> anyhow::Result<String> {
    anyhow::bail!("demo not built yet")
}
