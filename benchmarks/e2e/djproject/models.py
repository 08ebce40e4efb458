from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=64)
    value = models.IntegerField()

    class Meta:
        app_label = "djproject"
        db_table = "threadgov_e2e_item"
