"""Advanced matching parameters of the Processing algorithms (issue 6): descriptor, graph refinement and the
adaptation budget map to CoregConfig; defaults keep the engine's."""
from __future__ import annotations

from qgis.core import QgsProcessingContext, QgsProject, QgsRasterLayer


def test_descriptor_graph_budget_parameters(provider, s1s2_pair, project):
    from hsscl.plugin.algorithms.coregister import CoregisterAlgorithm

    ref, tgt = s1s2_pair
    alg = CoregisterAlgorithm()
    alg.initAlgorithm()
    for name in ("DESCRIPTOR", "GRAPH", "ADAPT_BUDGET"):
        param = alg.parameterDefinition(name)
        assert param is not None and param.help(), name
        assert param.flags() & param.FlagAdvanced, name
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    reference = QgsRasterLayer(ref, "ref")
    base = {"REFERENCE": ref, "TARGET": tgt}
    config = alg.build_config(base, context, reference)
    assert (config.descriptor, config.graph, config.adapt, config.adapt_budget_s) == ("auto", "auto", False, 30.0)
    config = alg.build_config({**base, "DESCRIPTOR": 2, "GRAPH": 2, "ADAPT": True, "ADAPT_BUDGET": 12.5},
                              context, reference)
    assert (config.descriptor, config.graph, config.adapt, config.adapt_budget_s) == ("hsscl", "off", True, 12.5)
    assert alg.build_config({**base, "DESCRIPTOR": 1, "GRAPH": 1}, context, reference).descriptor == "cfog"
    assert alg.build_config({**base, "DESCRIPTOR": 3}, context, reference).descriptor == "hybrid"
