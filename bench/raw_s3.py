"""The server's ceiling: parallel PUTs or GETs of 16 MiB objects with no client hashing.

Signs requests with SigV4 and UNSIGNED-PAYLOAD (so nothing hashes the bytes), sends
straight from memory-mapped files and discards what it reads: what is left is the
server's work and the loopback's.

usage: raw_s3.py put DATA_DIR BUCKET PREFIX STREAMS
       raw_s3.py get IGNORED BUCKET PREFIX STREAMS
(endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)
"""

import datetime
import hashlib
import hmac
import http.client
import mmap
import os
import sys
import threading
import urllib.parse

PART = 16 << 20


def sign(method, host, path, key, secret, region="us-east-1"):
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers = {"host": host, "x-amz-content-sha256": "UNSIGNED-PAYLOAD", "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [method, urllib.parse.quote(path), "", "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), signed, "UNSIGNED-PAYLOAD"]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = f"AWS4-HMAC-SHA256 Credential={os.environ['AWS_ACCESS_KEY_ID']}/{scope}, SignedHeaders={signed}, Signature={sig}"
    return headers


def main():
    op, data_dir, bucket, prefix, streams = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    url = urllib.parse.urlparse(os.environ["AWS_ENDPOINT_URL"])
    key, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    work = []
    if op == "put":
        for name in sorted(os.listdir(data_dir)):
            path = os.path.join(data_dir, name)
            if name.startswith(".") or not os.path.isfile(path):
                continue
            size = os.path.getsize(path)
            for i, off in enumerate(range(0, size, PART)):
                work.append((f"/{bucket}/{prefix}/{name}.{i:05d}", path, off, min(PART, size - off)))
        with open(os.path.join(os.environ.get("TMPDIR", "/tmp"), "raw_s3_keys.txt"), "w") as f:
            f.write("\n".join(w[0] for w in work))
    else:
        with open(os.path.join(os.environ.get("TMPDIR", "/tmp"), "raw_s3_keys.txt")) as f:
            work = [(line.strip(), None, 0, 0) for line in f if line.strip()]
    lock = threading.Lock()
    errors = []

    def worker():
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        maps = {}
        while True:
            with lock:
                if not work:
                    break
                path, src, off, n = work.pop()
            try:
                if op == "put":
                    if src not in maps:
                        f = open(src, "rb")
                        maps[src] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                    body = memoryview(maps[src])[off : off + n]
                    h = sign("PUT", url.netloc, path, key, secret)
                    h["content-length"] = str(n)
                    conn.request("PUT", path, body=body, headers=h)
                else:
                    conn.request("GET", path, headers=sign("GET", url.netloc, path, key, secret))
                r = conn.getresponse()
                while r.read(1 << 20):
                    pass
                if r.status != 200:
                    errors.append(f"{path}: HTTP {r.status}")
            except Exception as e:  # reported below; the bench fails
                errors.append(f"{path}: {e}")
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)

    threads = [threading.Thread(target=worker) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit("raw_s3: " + "; ".join(errors[:5]))


if __name__ == "__main__":
    main()
