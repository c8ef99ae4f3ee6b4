"""twistd plugin: ``twistd cookiesaver``. Names the tap module; imports nothing else."""

from twisted.application.service import ServiceMaker

cookiesaver = ServiceMaker(
    "cookiesaver",
    "cookiesaver.tap",
    "Pixel-and-push server: click-through matching, behaviour tracking, web push.",
    "cookiesaver",
)
