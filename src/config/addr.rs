//! Addresses, networks and `address:port` strings, with messages an operator can act on.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::ruleset::Family;

/// A network in CIDR notation, with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parses an address, saying which family it looked like when it is wrong.
pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        // ip6tables would take it as IPv6 and no IPv4 packet would ever match it.
        if let IpAddr::V6(v6) = ip {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return Err(format!("an IPv4-mapped IPv6 address; write the IPv4 address {v4}"));
            }
        }
        return Ok(ip);
    }
    if text.contains(':') {
        Err("invalid IPv6 address".into())
    } else if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == '.') {
        Err("invalid IPv4 address".into())
    } else {
        Err("not an IP address (host names are not resolved)".into())
    }
}

/// Parses `198.19.0.0/16`, `2001:db8::/32` or a bare address (a single host).
pub fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let (addr_text, prefix_text) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr = parse_ip(addr_text)?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix_text {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max && !p.starts_with('+') => n,
            _ => return Err(format!("invalid prefix length \"{p}\" (0 to {max})")),
        },
    };
    let network = mask(addr, prefix);
    if network != addr {
        return Err(format!("host bits are set; did you mean {network}/{prefix}?"));
    }
    Ok(Cidr { addr, prefix })
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

/// Parses `198.19.0.2:8080`, `[2001:db8::2]:8080`, or an address alone (port `None`).
pub fn parse_host_port(text: &str) -> Result<(IpAddr, Option<u16>), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err("missing \"]\" after the IPv6 address".into());
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("unexpected \"{after}\" after \"]\"")),
            },
        }
    } else if text.matches(':').count() == 1 {
        let (host, port) = text.split_once(':').unwrap_or((text, ""));
        (host, Some(port))
    } else {
        (text, None)
    };
    let ip = parse_ip(host)?;
    let port = port.map(parse_port).transpose()?;
    Ok((ip, port))
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(p) if p > 0 && !text.starts_with('+') => Ok(p),
        _ => Err(format!("invalid port \"{text}\" (1 to 65535)")),
    }
}

/// `198.19.0.2:8080` or `[2001:db8::2]:8080`: the form DNAT and comments print.
pub fn host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_networks() {
        assert_eq!(parse_cidr("198.19.0.0/16").unwrap().to_string(), "198.19.0.0/16");
        assert_eq!(parse_cidr("198.18.5.5").unwrap().to_string(), "198.18.5.5/32");
        assert_eq!(parse_cidr("2001:db8:1::/64").unwrap().to_string(), "2001:db8:1::/64");
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap().prefix, 0);
        assert_eq!(parse_cidr("::/0").unwrap().prefix, 0);
        assert!(parse_cidr("198.19.1.0/16").unwrap_err().contains("did you mean 198.19.0.0/16"));
        assert!(parse_cidr("198.19.0.0/33").unwrap_err().contains("invalid prefix length"));
        assert!(parse_cidr("198.19.0.0/+3").is_err());
        assert_eq!(parse_cidr("198.19.0.300/16").unwrap_err(), "invalid IPv4 address");
        assert!(parse_cidr("::ffff:198.19.0.0/112").unwrap_err().contains("write the IPv4 address 198.19.0.0"));
    }

    #[test]
    fn parses_endpoints() {
        let v4: IpAddr = "198.19.0.2".parse().unwrap();
        let v6: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(parse_host_port("198.19.0.2:8080").unwrap(), (v4, Some(8080)));
        assert_eq!(parse_host_port("198.19.0.2").unwrap(), (v4, None));
        assert_eq!(parse_host_port("[2001:db8::2]:8080").unwrap(), (v6, Some(8080)));
        assert_eq!(parse_host_port("[2001:db8::2]").unwrap(), (v6, None));
        assert_eq!(parse_host_port("2001:db8::2").unwrap(), (v6, None));
        assert_eq!(parse_host_port("198.19.0.300:80").unwrap_err(), "invalid IPv4 address");
        assert!(parse_host_port("198.19.0.2:0").unwrap_err().contains("invalid port"));
        assert!(parse_host_port("198.19.0.2:65536").unwrap_err().contains("invalid port"));
        assert!(parse_host_port("[2001:db8::2").unwrap_err().contains("missing"));
        assert!(parse_host_port("web.local:80").unwrap_err().contains("host names"));
        assert!(parse_host_port("").is_err());
        assert!(parse_host_port("[::ffff:198.19.0.2]:80").unwrap_err().contains("IPv4-mapped"));
    }

    #[test]
    fn prints_host_ports() {
        assert_eq!(host_port("198.19.0.2".parse().unwrap(), 80), "198.19.0.2:80");
        assert_eq!(host_port("2001:db8::2".parse().unwrap(), 80), "[2001:db8::2]:80");
    }
}
