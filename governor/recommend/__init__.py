"""``governor recommend``: right-sizing suggestions and starved / over-provisioned flags
per group from the stored history (docs/recommend.md)."""
