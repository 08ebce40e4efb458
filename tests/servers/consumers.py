import os
import threading

from channels.generic.websocket import JsonWebsocketConsumer

from .views import backend_pid


class DbConsumer(JsonWebsocketConsumer):
    """Sync consumer: every message is answered after one query, from a worker thread."""

    def receive_json(self, content, **kwargs):
        self.send_json(
            {
                "seq": content["seq"],
                "pid": os.getpid(),
                "backend": backend_pid(),
                "thread": threading.current_thread().name,
            }
        )
