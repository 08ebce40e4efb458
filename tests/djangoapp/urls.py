from django.urls import path

from . import views

urlpatterns = [
    path("orm/", views.orm),
    path("block/", views.block),
    path("pg/", views.pg),
    path("wait/", views.wait),
]
