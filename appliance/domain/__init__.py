"""Pure logic of the appliance: no network, database, filesystem or framework imports.

Everything here takes its inputs (records, the clock, settings values) as arguments so that
tests are exact and the edges can be swapped.
"""
