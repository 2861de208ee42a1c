//! An authoritative DNS server (hickory-server) for the zone `test.` on a loopback
//! port, UDP and TCP on the same port, serving the records a test gives it.

use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, PTR, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use tokio::net::{TcpListener, UdpSocket};

/// A record to serve: owner name (absolute) and data.
pub enum Rr {
    /// TXT with one string.
    Txt(&'static str, &'static str),
    /// A.
    A(&'static str, Ipv4Addr),
    /// PTR.
    Ptr(&'static str, &'static str),
}

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn zone(origin: &str, records: &[&Rr]) -> InMemoryZoneHandler<TokioRuntimeProvider> {
    let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
        name(origin),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    );
    let soa = SOA::new(
        name(&format!("ns.{origin}")),
        name(&format!("hostmaster.{origin}")),
        1,
        3600,
        600,
        86400,
        60,
    );
    assert!(zone.upsert_mut(Record::from_rdata(name(origin), 60, RData::SOA(soa)), 1));
    for r in records {
        let rec = match r {
            Rr::Txt(o, t) => {
                Record::from_rdata(name(o), 60, RData::TXT(TXT::new(vec![(*t).to_owned()])))
            }
            Rr::A(o, ip) => Record::from_rdata(name(o), 60, RData::A(A(*ip))),
            Rr::Ptr(o, n) => Record::from_rdata(name(o), 60, RData::PTR(PTR(name(n)))),
        };
        assert!(zone.upsert_mut(rec, 1));
    }
    zone
}

/// A running test DNS server; stops when dropped.
pub struct TestDns {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    _server: Server<Catalog>,
}

/// Serves `records` from the zones `origins` (each record goes to the zone its owner
/// name ends with) on a free loopback port.
pub async fn start_dns(origins: &[&str], records: &[Rr]) -> TestDns {
    let mut catalog = Catalog::new();
    for origin in origins {
        let mine: Vec<&Rr> = records
            .iter()
            .filter(|r| {
                let o = match r {
                    Rr::Txt(o, _) | Rr::A(o, _) | Rr::Ptr(o, _) => o,
                };
                o.ends_with(origin)
                    && !origins
                        .iter()
                        .any(|x| x.len() > origin.len() && x.ends_with(origin) && o.ends_with(x))
            })
            .collect();
        catalog.upsert(
            LowerName::from(name(origin)),
            vec![Arc::new(zone(origin, &mine))],
        );
    }
    for _ in 0..50 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = TcpListener::bind(addr).await {
            let mut server = Server::new(catalog);
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(5), 16);
            return TestDns {
                addr,
                _server: server,
            };
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}
