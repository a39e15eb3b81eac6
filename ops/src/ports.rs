//! The listening ports of a playground: a fixed layout from a base port, or
//! ports the OS hands out; checked to be free before anything starts.

use std::net::TcpListener;

use crate::error::{OpsError, Result};

/// Most PD members a playground runs.
pub const MAX_PD: usize = 7;
/// Most stores a playground runs.
pub const MAX_STORES: usize = 64;

/// Ports of one PD member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PdPorts {
    /// gRPC (stores and routers).
    pub grpc: u16,
    /// HTTP (API, /metrics, dashboard).
    pub http: u16,
    /// Member-to-member raft traffic (used with several members).
    pub peer: u16,
}

/// Ports of every component of a playground.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPlan {
    /// Per PD member.
    pub pds: Vec<PdPorts>,
    /// Router gRPC (the client endpoint).
    pub router: u16,
    /// Router status (/metrics, /status).
    pub router_status: u16,
    /// Per store: (gRPC, status).
    pub stores: Vec<(u16, u16)>,
}

impl PortPlan {
    /// The layout from `base` (0: ports chosen by the OS): PD member `i`
    /// (from 0) at `base+3i` gRPC, `base+3i+1` HTTP, `base+3i+2` peer;
    /// the router at `base+30` gRPC and `base+31` status; store `i` (from
    /// 0) at `base+40+2i` gRPC and `base+41+2i` status.
    pub fn new(base: u16, pds: usize, stores: usize) -> Result<PortPlan> {
        if base == 0 {
            // Hold every listener until the plan is complete, so the OS
            // cannot hand out the same port twice.
            let mut held: Vec<TcpListener> = Vec::new();
            let mut next = || -> Result<u16> {
                let l = TcpListener::bind("127.0.0.1:0")
                    .map_err(|e| OpsError::io("cannot find a free port on", "127.0.0.1", e))?;
                let port = l
                    .local_addr()
                    .map_err(|e| OpsError::io("cannot find a free port on", "127.0.0.1", e))?
                    .port();
                held.push(l);
                Ok(port)
            };
            return Ok(PortPlan {
                pds: (0..pds)
                    .map(|_| {
                        Ok(PdPorts {
                            grpc: next()?,
                            http: next()?,
                            peer: next()?,
                        })
                    })
                    .collect::<Result<_>>()?,
                router: next()?,
                router_status: next()?,
                stores: (0..stores)
                    .map(|_| Ok((next()?, next()?)))
                    .collect::<Result<_>>()?,
            });
        }
        let top = base as usize + 41 + 2 * stores;
        if top > u16::MAX as usize {
            return Err(OpsError::InvalidInput(format!(
                "--base-port {base} leaves no room for {stores} stores (ports up to {top} needed)"
            )));
        }
        let at = |offset: usize| (base as usize + offset) as u16;
        Ok(PortPlan {
            pds: (0..pds)
                .map(|i| PdPorts {
                    grpc: at(3 * i),
                    http: at(3 * i + 1),
                    peer: at(3 * i + 2),
                })
                .collect(),
            router: at(30),
            router_status: at(31),
            stores: (0..stores)
                .map(|i| (at(40 + 2 * i), at(41 + 2 * i)))
                .collect(),
        })
    }

    /// Every port with the component it belongs to. Peer ports count only
    /// with several PD members.
    pub fn all(&self) -> Vec<(String, u16)> {
        let mut all = Vec::new();
        for (i, p) in self.pds.iter().enumerate() {
            all.push((format!("PD {}", i + 1), p.grpc));
            all.push((format!("PD {} HTTP", i + 1), p.http));
            if self.pds.len() > 1 {
                all.push((format!("PD {} peer", i + 1), p.peer));
            }
        }
        all.push(("router".to_string(), self.router));
        all.push(("router status".to_string(), self.router_status));
        for (i, (grpc, status)) in self.stores.iter().enumerate() {
            all.push((format!("store {}", i + 1), *grpc));
            all.push((format!("store {} status", i + 1), *status));
        }
        all
    }

    /// Fails with a clear message naming the first port already in use.
    pub fn check_free(&self) -> Result<()> {
        for (what, port) in self.all() {
            if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
                return Err(OpsError::InvalidInput(format!(
                    "port {port} for {what} is not available ({e}); choose another --base-port or stop what uses it"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_layout_from_base() {
        let p = PortPlan::new(30000, 3, 2).unwrap();
        assert_eq!(
            p.pds[1],
            PdPorts {
                grpc: 30003,
                http: 30004,
                peer: 30005
            }
        );
        assert_eq!((p.router, p.router_status), (30030, 30031));
        assert_eq!(p.stores, vec![(30040, 30041), (30042, 30043)]);
        assert_eq!(p.all().len(), 9 + 2 + 4);
        assert_eq!(PortPlan::new(30000, 1, 2).unwrap().all().len(), 2 + 2 + 4);
        assert!(PortPlan::new(65500, 1, 3).is_err());
    }

    #[test]
    fn os_ports_are_nonzero_and_distinct() {
        let p = PortPlan::new(0, 7, 64).unwrap();
        assert_eq!(p.stores.len(), 64);
        let mut ports: Vec<u16> = p.all().iter().map(|(_, port)| *port).collect();
        assert_eq!(ports.len(), 7 * 3 + 2 + 64 * 2);
        assert!(ports.iter().all(|port| *port != 0));
        let n = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), n, "a port was handed out twice");
    }

    #[test]
    fn occupied_port_is_named() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = l.local_addr().unwrap().port();
        let mut p = PortPlan::new(0, 1, 1).unwrap();
        p.router = taken;
        let err = p.check_free().unwrap_err().to_string();
        assert!(err.contains(&format!("port {taken} for router")), "{err}");
    }
}
