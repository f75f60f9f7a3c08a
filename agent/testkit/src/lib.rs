//! Test-only kit for real-host tests: Incus containers, HAProxy, signed repositories.
