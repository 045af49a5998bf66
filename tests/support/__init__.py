"""What the tests share: real servers on loopback ports, real redis-server and Chromium, the
fake Facebook, stand-ins for a socket, and waiting on conditions."""
