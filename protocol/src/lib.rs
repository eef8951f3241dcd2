//! Confidant's wire protocol: frames, key configs, HPKE encapsulation bound to attestation, streamed
//! responses and sessions. A sans-I/O library: no sockets, clocks or files.
