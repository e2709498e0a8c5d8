"""The floor for the dispatch benchmark: a bare Celery task doing one SELECT and one messages.create.

    BENCH_DATABASE_URL=postgresql+psycopg://… CELERY_BROKER_URL=redis://… TWILIO_API_BASE_URL=http://… \
    celery -A bench.bare_worker worker --pool=threads --concurrency=8 -Q bare

Same engine options as the gateway's, the same real twilio client redirected the same way.
"""

from __future__ import annotations

import os

from celery import Celery
from sqlalchemy import create_engine, text
from twilio.rest import Client

from gateway.twilio.client import RedirectingHttpClient

celery = Celery("bare", broker=os.environ["CELERY_BROKER_URL"])
celery.conf.update(task_ignore_result=True, task_acks_late=True, worker_prefetch_multiplier=1,
                   task_default_queue="bare", task_serializer="json", accept_content=["json"])
engine = create_engine(os.environ["BENCH_DATABASE_URL"], pool_size=10, max_overflow=10)
client = Client(os.environ["TWILIO_ACCOUNT_SID"], os.environ["TWILIO_AUTH_TOKEN"],
                http_client=RedirectingHttpClient(os.environ["TWILIO_API_BASE_URL"], 10.0), environment={"_": "_"})


@celery.task(name="bare.send")
def send(number_id: int) -> str:
    with engine.connect() as connection:
        e164 = connection.execute(text("SELECT e164 FROM numbers WHERE id = :id"), {"id": number_id}).scalar_one()
    return client.messages.create(to=e164, from_=os.environ["BENCH_SENDER"], body="Your order shipped").sid
