"""Everything on disk: durable writes, stored jobs and images, asynchronous job records, and
the start-up checks of who may write there."""
