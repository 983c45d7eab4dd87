//! Addresses for end-to-end tests.
#![allow(dead_code)]

/// A port nothing listens on (bound once by the OS, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
