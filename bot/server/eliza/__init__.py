"""elizaOS 1.7 compatibility: its REST routes (agents, server, memory, messaging sessions) in its
shapes, and its Socket.IO protocol, so the official elizaOS clients work against parley unchanged."""
