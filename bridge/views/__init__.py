"""What a person looks at: the live status (terminal and HTML page) and the curves of a job.

Downhill, as the rest of the bridge: :mod:`~bridge.views.reader` reads the store,
:mod:`~bridge.views.board` and :mod:`~bridge.views.curves` turn rows into view models (pure),
and :mod:`~bridge.views.live`, :mod:`~bridge.views.page` and :mod:`~bridge.views.show` draw
them. Nothing here writes to the store.
"""
