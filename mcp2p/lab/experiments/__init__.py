"""The lab's four experiments, one module each (see `mcp2p.lab.experiment`)."""
