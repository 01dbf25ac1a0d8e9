//! Telemetry: the agent publisher.
