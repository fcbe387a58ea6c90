"""Decisions: rules, offers, calendars, contact policy, arbitration, audit."""
