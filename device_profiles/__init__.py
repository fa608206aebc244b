"""Built-in device profiles: one TOML file per real device (read by edge_zo.memory.profiles)."""
