from django.urls import path

from . import views

urlpatterns = [
    path("fast", views.fast),
    path("slow", views.slow),
    path("mixed", views.mixed),
    path("_stats", views.stats),
]
