//! `conclave-bench`: the load generator for Conclave's client API.
fn main() {
    eprintln!("conclave-bench: not built yet (see the open issues)");
    std::process::exit(2);
}
