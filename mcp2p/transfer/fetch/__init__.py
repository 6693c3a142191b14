"""One download: find SNs, fetch the manifest, subscribe, receive, verify, deliver.

``Fetch.run()`` is the CN's whole transfer (DESIGN.md 5.1-5.8):

1. search for the content id (or resolve a content id prefix or a name to
   one content id, see `Fetch._find`); candidates sorted nearest first,
   then by rate;
2. open the TLS control channel to the first candidate, checking its key
   against the node id of its OFFER; download and verify the signed
   manifest (signature by that key, Merkle root = content id);
3. open the partial file (resuming verified pieces) and split the missing
   units between up to ``sources`` SNs;
4. subscribe to each (multicast: join its SSM/ASM group; unicast: a port of
   our own), hand every authenticated packet to the store, report losses,
   resync wanted maps, drop an SN that stalls or lies and give its share to
   the others (or to a new candidate);
5. when every piece verified, rename the file into place and unsubscribe.

Progress is reported as events (dicts) to ``on_event``.

One module per job, ``Fetch`` built in layers over them (see ``state``):
``common`` (errors, ``Source``, ``Search``), ``helpers`` (``wanted_chunks``),
``state`` (the fields), ``control`` (each SN's channel and subscription),
``resolve`` (the target's content id and manifest), ``supervise`` (ticks,
budgets, progress, failover), ``transfer`` (``run`` and its end), ``data``
(the per-packet path). Everything other modules use is re-exported here; to
change a constant or a name in a test, patch the module that reads it
(``control.Receiver``, ``control.RCVBUF``, ``supervise.TICK``,
``resolve.MAX_MANIFEST``), not this package.
"""

from typing import TYPE_CHECKING

from mcp2p.transfer.fetch.common import (
    FULL_ID,
    ID_PREFIX,
    Ambiguous,
    FetchError,
    NotFound,
    Search,
    Source,
    SourceState,
)
from mcp2p.transfer.fetch.control import RCVBUF
from mcp2p.transfer.fetch.data import Fetch
from mcp2p.transfer.fetch.helpers import wanted_chunks
from mcp2p.transfer.fetch.resolve import MAX_MANIFEST
from mcp2p.transfer.fetch.supervise import TICK

if TYPE_CHECKING:
    from mcp2p.transfer.fetch.common import IFetchReactor

__all__ = [
    "FULL_ID",
    "ID_PREFIX",
    "MAX_MANIFEST",
    "RCVBUF",
    "TICK",
    "Ambiguous",
    "Fetch",
    "FetchError",
    "IFetchReactor",
    "NotFound",
    "Search",
    "Source",
    "SourceState",
    "wanted_chunks",
]
