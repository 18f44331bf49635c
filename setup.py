from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = {}
for line in (ROOT / "speko_sync" / "__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        version["v"] = line.split("=", 1)[1].strip().strip('"')

TESTING = [
    "aiortc==1.16.*",
    "aiohttp>=3.9,<4",
    "pyjwt>=2.8,<3",
    "livekit-protocol>=1.1,<2",
]
API = ["httpx>=0.27,<1"]
DEV = TESTING + API + [
    "celery[redis]>=5.4,<6",  # examples/celery_worker.py and its test
    "pytest>=8",
    "mypy>=1.10",
    "ruff>=0.6",
    "types-protobuf",
]

setup(
    name="speko_sync",
    version=version["v"],
    description="Real-time voice conversations with Speko agents from plain, blocking Python",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["speko_sync", "speko_sync.*"]),
    package_data={"speko_sync": ["py.typed"]},
    install_requires=[
        "livekit==1.2.*",
        "livekit-protocol>=1.1.29,<2",  # LiveKit Agents' session stream (agent_pb)
        "numpy>=1.24",
        "blinker>=1.7",
        "pyaudio>=0.2.14",
        "websockets>=13,<18",  # realtime sessions (the websockets.asyncio API)
    ],
    extras_require={"testing": TESTING, "api": API, "dev": DEV},
    entry_points={"pytest11": ["speko_sync = speko_sync.testing.pytest_plugin"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Multimedia :: Sound/Audio :: Speech",
        "Typing :: Typed",
    ],
)
