//! `conclave`: the Conclave storage server binary.
fn main() {
    eprintln!("conclave: the server is not assembled yet (see the open issues)");
    std::process::exit(2);
}
