"""The fleet service: its store on real chDB, its consumer on a real broker."""
