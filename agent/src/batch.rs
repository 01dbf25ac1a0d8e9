//! `flotilla-agent batch`: scoring a file through the agent's scoring API.
