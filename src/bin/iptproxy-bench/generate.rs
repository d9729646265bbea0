//! Generated services, the same for the benchmark command and the criterion benchmarks
//! (which include this file): service `i` has VIP 198.18.x.y, port 80 and `endpoints`
//! endpoints, all distinct, in 198.19.0.0/16 (64,000 addresses; past that, other ports).

use std::fmt::Write;

/// The text of one config file holding services `first..first + count`, with `extra`
/// endpoints added to the services they name: (service, "address:port").
pub fn services_file(first: usize, count: usize, endpoints: usize, extra: &[(usize, String)]) -> String {
    let mut text = String::new();
    for i in first..first + count {
        let mut eps: Vec<String> = (i * endpoints..(i + 1) * endpoints)
            .map(|k| format!("\"198.19.{}.{}:{}\"", (k % 64_000) / 250, k % 250 + 1, 8080 + k / 64_000))
            .collect();
        eps.extend(extra.iter().filter(|(s, _)| *s == i).map(|(_, ep)| format!("\"{ep}\"")));
        let vip = format!("198.18.{}.{}", i / 250, i % 250 + 1);
        let _ = writeln!(
            text,
            "[[service]]\nname = \"svc-{i:05}\"\nvip = \"{vip}\"\nport = 80\nendpoints = [{}]\n",
            eps.join(", ")
        );
    }
    text
}

/// The whole config as (file name, text), `per_file` services to a file.
#[allow(dead_code)] // used by the criterion benchmarks
pub fn services(n: usize, endpoints: usize, per_file: usize) -> Vec<(String, String)> {
    let per_file = per_file.max(1);
    (0..n.div_ceil(per_file))
        .map(|f| {
            let first = f * per_file;
            (format!("{f:04}.toml"), services_file(first, per_file.min(n - first), endpoints, &[]))
        })
        .collect()
}
