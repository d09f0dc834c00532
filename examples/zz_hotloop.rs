use tollgate::{Limit, Limits, Options, Store};
fn main() {
    let store = Store::open_in_memory(Options::default().compactor(false)).unwrap();
    let limits = Limits::new(&[Limit::per_minute(5_000), Limit::per_hour(65_000)]).unwrap();
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let t0 = 1_700_000_000_000u64;
    let mut ok = 0u64;
    for i in 0..n {
        let d = store
            .check_at(b"tok_hot_key_0001", &limits, 1, t0 + i * 100)
            .unwrap();
        ok += d.allowed() as u64;
    }
    println!("{ok}");
}
