//! The Musketeer agent (placeholder until the agent lands).
