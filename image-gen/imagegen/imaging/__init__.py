"""Making images: request parsing, input images, the one core operation every face calls,
the answers, image formats, placeholder drawing and thumbnails."""
