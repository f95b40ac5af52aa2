//! Human-readable numbers.

/// 1234567 → "1.23 M".
pub fn count(n: u64) -> String {
    let n = n as f64;
    match n {
        _ if n >= 1e9 => format!("{:.3} B", n / 1e9),
        _ if n >= 1e6 => format!("{:.2} M", n / 1e6),
        _ if n >= 1e3 => format!("{:.1} K", n / 1e3),
        _ => format!("{n}"),
    }
}

/// Bytes in binary units: 3_510_000_000 → "3.27 GiB".
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    const K: f64 = 1024.0;
    match n {
        _ if n >= K * K * K => format!("{:.2} GiB", n / (K * K * K)),
        _ if n >= K * K => format!("{:.1} MiB", n / (K * K)),
        _ if n >= K => format!("{:.1} KiB", n / K),
        _ => format!("{n} B"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn units() {
        assert_eq!(super::count(1_627_000_000), "1.627 B");
        assert_eq!(super::count(950), "950");
        assert_eq!(super::bytes(2048), "2.0 KiB");
    }
}
