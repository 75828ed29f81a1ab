"""The reference alert pipeline: ISR, image difference, detection, Rubin alert packets.

Run by a pilot's warm worker as the ``python`` payload ``prompt.pipeline.task:run``.
"""
