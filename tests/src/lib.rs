//! End-to-end tests of the fleet live in `tests/tests/`, one file per property
//! they prove. This library is empty for now; shared harness code (starting a
//! hub, agents and a broker on loopback in temp dirs) goes here as those parts
//! land.
