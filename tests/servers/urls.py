from django.urls import path

from . import views

urlpatterns = [path("db/", views.db), path("debug/", views.debug)]
