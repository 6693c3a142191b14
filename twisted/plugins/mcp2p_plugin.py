from twisted.application.service import ServiceMaker

mcp2p = ServiceMaker("mcp2p", "mcp2p.tap", "Multicast peer-to-peer file sharing node", "mcp2p")
