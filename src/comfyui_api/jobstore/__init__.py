"""Job records and where they are kept: one record per request, durable past the request's end and a restart.

    records.py  JobRecord (what the store holds of a job) and JobStatus (its states)
    base.py     JobStore, the interface the rest of the server uses: save, get, list, delete expired
    sqlite.py   the embedded store (SQLite through SQLAlchemy's asyncio extension and aiosqlite), the default
    writer.py   RecordWriter: takes record changes without waiting, writes them behind in batched transactions
    sweeper.py  deletes records past their `expires_at`

The in-memory registry (pipeline/jobs.py) stays the truth for jobs in flight; the store is what remains of them.
Nothing here imports pipeline/ or api/, so a shared store (PostgreSQL) can replace the SQLite one behind JobStore.
"""
