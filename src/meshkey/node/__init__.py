"""The node: composes every layer below; daemon, control API and state directory."""
