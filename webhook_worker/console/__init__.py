"""The ops console: `webhook-worker console`, server-rendered pages plus the /ops JSON API on
a listener of its own, never on the public webhook port."""
