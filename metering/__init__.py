"""Metering: keys, the limiter, the ledger, usage records and the request lifecycle.

Every metered operation (embeddings, batch chunks, and what comes next) runs through
`metering.lifecycle`; nothing here knows about payments (auto-recharge is a hook, see
`metering.hooks`).
"""
