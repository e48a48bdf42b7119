//! The protocol core: sans-IO sender and receiver state machines (see docs/PROTOCOL.md).
