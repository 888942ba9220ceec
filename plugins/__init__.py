"""archfleet's built-in plugins. Each uses only the public hooks, like an installed plugin."""
