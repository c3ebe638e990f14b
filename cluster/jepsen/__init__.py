"""Jepsen-style schedules against a real cluster: clients write unique values through the
redirectors while a seeded nemesis kills, stops and blackholes CVMs; a checker proves every
acknowledged write is read back until a later one replaces it (see README.md)."""
