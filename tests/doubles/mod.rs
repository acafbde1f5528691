//! The test doubles themselves, checked against real clients: if these fail, the baton
//! tests that use them prove nothing. The doubles live in fixtures/, their harnesses in
//! tests/common/.

// The Chirp proxy double (fixtures/chirp_server.py) answers as HTCondor's starter does, also to HTCondor's own client.
mod chirp;
// The fault-injecting S3 proxy (fixtures/fault_proxy.py) injects each fault it claims, and nothing without one.
mod fault_proxy;
// The Pelican federation double (fixtures/pelican_federation.py) behaves like Pelican, also to the real pelicanfs client.
mod pelican;
