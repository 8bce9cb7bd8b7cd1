"""A minimal keep-alive HTTP/1.1 upstream on 127.0.0.1:18190 answering 200 \"ok\" to everything."""
import asyncio
async def handle(r, w):
    try:
        while True:
            data = b''
            while b'\r\n\r\n' not in data:
                chunk = await r.read(4096)
                if not chunk: return
                data += chunk
            w.write(b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'); await w.drain()
    except Exception: pass
async def main():
    srv = await asyncio.start_server(handle, '127.0.0.1', 18190)
    await srv.serve_forever()
asyncio.run(main())
