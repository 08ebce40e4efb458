from django.urls import path

from . import views

urlpatterns = [
    path("orm/", views.orm),
    path("block/", views.block),
    path("pg/", views.pg),
    path("wait/", views.wait),
    path("pg-slow/", views.pg_slow),
    path("pg-write/", views.pg_write),
    path("stream/", views.stream),
]
