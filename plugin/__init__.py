"""Protocol server and composition root of swarmnet-overlay."""
