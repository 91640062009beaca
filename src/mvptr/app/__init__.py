"""The search service: the coarse stage over large collections (:mod:`.coarse`), the HTTP
API and its page (:mod:`.server`), and the ``mvptr serve`` command (:mod:`.serve`)."""
