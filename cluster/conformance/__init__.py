"""The initiator conformance kit (`stargate conformance`): see README.md here."""
